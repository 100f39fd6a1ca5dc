"""Build and install mmsgformer.

The significance-guided aggregation op (``mmsgformer/ops/csrc``) is compiled during the normal
install: the C++ CPU kernel always, the CUDA kernel as well when ``FORCE_CUDA=1`` or a GPU is
visible. Install with ``pip install -e . --no-build-isolation --use-pep517`` (the build must see
the installed torch); ``tools/setup_env.sh`` does this for you.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join('mmsgformer', 'ops', 'csrc')

# Runtime dependencies, with the versions tested together (see tools/setup_env.sh).
INSTALL_REQUIRES = [
    'torch==2.14.1',
    'torchvision==0.29.1',
    'mmengine==0.10.7',
    'mmcv==2.1.0',
    'mmdet==3.3.0',
    'mmsegmentation==1.2.2',
    'mmpretrain==1.2.0',
    'ftfy',
    'regex',
    'pycocotools',
    'matplotlib',
    'numpy',
]


def _want_cuda() -> bool:
    if os.environ.get('FORCE_CUDA', '0') == '1':
        return True
    try:
        import torch
        return torch.cuda.is_available() and os.environ.get('FORCE_CUDA') != '0'
    except Exception:  # pragma: no cover - torch missing means no extension at all
        return False


def _extensions():
    """The op extension, or nothing when torch (or the sources) are unavailable.

    The CPU kernel is always built; it uses ATen's OpenMP ``parallel_for``, which runs serially
    unless compiled with ``-fopenmp``. The CUDA kernel is added when ``FORCE_CUDA=1`` or a GPU is
    visible. Without a GPU, ``TORCH_CUDA_ARCH_LIST`` defaults to "8.0;9.0" and ``CUDA_HOME`` to
    /usr/local/cuda (torch's auto-detection would take the directory of an ``nvcc`` wrapper).
    """
    want_cuda = _want_cuda()
    if want_cuda and not (os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')):
        if os.path.exists('/usr/local/cuda/bin/nvcc'):
            os.environ['CUDA_HOME'] = '/usr/local/cuda'  # before cpp_extension reads it
    try:
        from torch.utils.cpp_extension import (BuildExtension, CppExtension,
                                               CUDAExtension)
    except ImportError:
        print('mmsgformer: torch not importable at build time; '
              'installing without the C++ op (the pure-PyTorch path will be used)',
              file=sys.stderr)
        return [], {}
    cpp_sources = sorted(glob.glob(os.path.join(CSRC, '*.cpp')) +
                         glob.glob(os.path.join(CSRC, 'cpu', '*.cpp')))
    if not cpp_sources:
        return [], {}
    cxx_flags = ['-O3', '-std=c++20', '-g0']
    link_flags = []
    if sys.platform.startswith('linux'):
        cxx_flags.append('-fopenmp')
        link_flags.append('-fopenmp')
    include_dirs = [os.path.join(HERE, CSRC)]
    if want_cuda:
        import torch
        if not torch.cuda.is_available():
            os.environ.setdefault('TORCH_CUDA_ARCH_LIST', '8.0;9.0')
        cu_sources = sorted(glob.glob(os.path.join(CSRC, 'cuda', '*.cu')))
        ext = CUDAExtension(
            'mmsgformer._C',
            cpp_sources + cu_sources,
            include_dirs=include_dirs,
            define_macros=[('WITH_CUDA', None)],
            extra_compile_args={
                'cxx': cxx_flags,
                'nvcc': ['-O3', '-std=c++20', '--expt-relaxed-constexpr'],
            },
            extra_link_args=link_flags)
    else:
        ext = CppExtension(
            'mmsgformer._C',
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={'cxx': cxx_flags},
            extra_link_args=link_flags)
    return [ext], {'build_ext': BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()

setup(
    name='mmsgformer',
    version='0.1.0',
    description='SG-Former (and Focal Transformer) backbones for mmpretrain, mmdet and '
                'mmsegmentation',
    long_description=open(os.path.join(HERE, 'README.md')).read()
    if os.path.exists(os.path.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tools', 'configs')),
    python_requires='>=3.10',
    install_requires=INSTALL_REQUIRES,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
    license='Apache-2.0',
)
