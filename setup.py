"""Build and install mmsgformer.

The significance-guided aggregation op (``mmsgformer/ops/csrc``) is compiled against the torch
of the environment it is installed into: the C++ CPU kernel always, the CUDA kernel as well when
``FORCE_CUDA=1`` or a GPU is visible. The build must see that torch, so install without build
isolation, into an environment that has torch (>= 2.1) already:

    pip install . --no-build-isolation                         # or: pip wheel / python -m build
    pip install -e . --no-build-isolation --use-pep517          # editable (what setup_env.sh does)
    mim install -e ".[mim]" --no-build-isolation               # also mmcv, via mim

torch is not a declared dependency (like mmdet, mmseg and mmpretrain): pip never replaces the
user's torch. mmcv is in the ``mim`` extra, as in mmdet: mim picks the prebuilt wheel for the
installed torch. The version ranges come from ``mmsgformer/version.py``; the exact versions tested
together from ``requirements/constraints.txt``. ``MMSGFORMER_WITH_OP=0`` installs without the
compiled op (the pure-PyTorch reference is used).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join('mmsgformer', 'ops', 'csrc')


def _read_version_file() -> dict:
    """``mmsgformer/version.py`` executed on its own (importing the package needs torch)."""
    namespace: dict = {}
    with open(os.path.join(HERE, 'mmsgformer', 'version.py')) as f:
        exec(compile(f.read(), 'mmsgformer/version.py', 'exec'), namespace)
    return namespace


VERSION_INFO = _read_version_file()
_req = VERSION_INFO['requirement']

# Runtime dependencies as ranges. Neither torch nor mmcv: see the module docstring.
INSTALL_REQUIRES = [
    _req('mmengine'),
    _req('mmdet'),
    _req('mmsegmentation'),
    _req('mmpretrain'),
    'numpy',
    'matplotlib',
    'ftfy',   # mmseg.utils imports ftfy and regex without declaring them
    'regex',
]
EXTRAS_REQUIRE = {
    'mim': [_req('mmcv'), _req('mmengine')],
    'tests': ['pytest'],
    # tools/deployment/export_onnx.py (torch.onnx.export(dynamo=True) needs onnxscript)
    'deploy': ['onnx>=1.16', 'onnxscript>=0.3', 'onnxruntime>=1.18'],
}
EXTRAS_REQUIRE['all'] = sorted(set(INSTALL_REQUIRES + EXTRAS_REQUIRE['mim'] +
                                   EXTRAS_REQUIRE['tests']))

NO_TORCH_MESSAGE = (
    'mmsgformer: torch is not importable in the build environment. The op compiles against the '
    'torch it will run with, and pip builds in an isolated environment (without your torch) '
    'unless told otherwise: install torch >= {low} first, then `pip install . '
    '--no-build-isolation` (editable: `pip install -e . --no-build-isolation --use-pep517`). '
    'To install without the compiled op (pure-PyTorch fallback), set MMSGFORMER_WITH_OP=0.')


def _want_cuda() -> bool:
    if os.environ.get('FORCE_CUDA', '0') == '1':
        return True
    try:
        import torch
        return torch.cuda.is_available() and os.environ.get('FORCE_CUDA') != '0'
    except Exception:  # pragma: no cover - torch missing means no extension at all
        return False


def _cxx_std(torch_version: str) -> str:
    """The C++ standard for torch's headers: C++20 from torch 2.10 on, C++17 before."""
    major, minor = (int(p) for p in torch_version.split('+')[0].split('.')[:2])
    return '-std=c++20' if (major, minor) >= (2, 10) else '-std=c++17'


def _extensions():
    """The op extension (and its build command), or nothing with ``MMSGFORMER_WITH_OP=0``.

    The CPU kernel is always built; it uses ATen's OpenMP ``parallel_for``, which runs serially
    unless compiled with ``-fopenmp``. The CUDA kernel is added when ``FORCE_CUDA=1`` or a GPU is
    visible. Without a GPU, ``TORCH_CUDA_ARCH_LIST`` defaults to "8.0;9.0" and ``CUDA_HOME`` to
    /usr/local/cuda (torch's auto-detection would take the directory of an ``nvcc`` wrapper).

    Raises:
        RuntimeError: torch is not importable (build isolation) or older than supported.
    """
    if 'sdist' in sys.argv[1:]:
        return [], {}  # a source distribution compiles nothing
    if os.environ.get('MMSGFORMER_WITH_OP', '1') == '0':
        print('mmsgformer: MMSGFORMER_WITH_OP=0: installing without the C++ op '
              '(the pure-PyTorch reference will be used)', file=sys.stderr)
        return [], {}
    low = VERSION_INFO['SUPPORTED']['torch'][0]
    try:
        import torch
    except ImportError:
        raise RuntimeError(NO_TORCH_MESSAGE.format(low=low)) from None
    release = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2])
    if release < tuple(int(p) for p in low.split('.')[:2]):
        raise RuntimeError(f'mmsgformer needs torch >= {low}, found torch {torch.__version__}')
    want_cuda = _want_cuda()
    if want_cuda and not (os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')):
        if os.path.exists('/usr/local/cuda/bin/nvcc'):
            os.environ['CUDA_HOME'] = '/usr/local/cuda'  # before cpp_extension reads it
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    cpp_sources = sorted(glob.glob(os.path.join(CSRC, '*.cpp')) +
                         glob.glob(os.path.join(CSRC, 'cpu', '*.cpp')))
    if not cpp_sources:
        return [], {}
    std = _cxx_std(torch.__version__)
    cxx_flags = ['-O3', std, '-g0']
    link_flags = []
    if sys.platform.startswith('linux'):
        cxx_flags.append('-fopenmp')
        link_flags.append('-fopenmp')
    include_dirs = [os.path.join(HERE, CSRC)]
    if want_cuda:
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
                'nvcc': ['-O3', std, '--expt-relaxed-constexpr'],
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


# What mim reads from mmsgformer/.mim: `mim search mmsgformer` (model-index.yml and the
# metafiles it imports), `mim train/test mmsgformer CONFIG` (configs/, tools/).
MIM_FILES = ('configs', 'tools', 'model-index.yml')
MIM_PACKAGE_DATA = ['.mim/model-index.yml', '.mim/configs/**/*.py', '.mim/configs/**/*.yml',
                    '.mim/configs/**/*.md', '.mim/tools/**/*.py', '.mim/tools/**/*.sh']


def add_mim_extension() -> None:
    """Put configs/, tools/ and model-index.yml into ``mmsgformer/.mim``, as mmdet's setup.py.

    A wheel, ``pip install .`` and an sdist get copies (shipped through ``MIM_PACKAGE_DATA``); a
    legacy ``setup.py develop`` install gets symlinks. A PEP 660 editable install
    (``pip install -e . --use-pep517``) gets nothing: mim looks for
    ``site-packages/mmsgformer/.mim/model-index.yml``, which such an install does not have.
    """
    import shutil
    if 'develop' in sys.argv:
        mode = 'symlink'
    elif 'sdist' in sys.argv or 'bdist_wheel' in sys.argv:
        mode = 'copy'
    else:
        return
    mim_path = os.path.join(HERE, 'mmsgformer', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src, dst = os.path.join(HERE, name), os.path.join(mim_path, name)
        if os.path.islink(dst) or os.path.isfile(dst):
            os.remove(dst)
        elif os.path.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(os.path.relpath(src, mim_path), dst)
        elif os.path.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


add_mim_extension()
ext_modules, cmdclass = _extensions()


def _build_options() -> dict:
    """One build folder per torch (``build/torch-<version>``). setuptools skips compiling an
    extension whose output is newer than its sources, so a tree built once for another torch
    would otherwise install that torch's op library (which then fails to load)."""
    if not ext_modules:
        return {}
    import torch
    return {'build': {'build_base': os.path.join('build', f'torch-{torch.__version__}')}}


setup(
    name='mmsgformer',
    version=VERSION_INFO['__version__'],
    description='SG-Former (and Focal Transformer) backbones for mmpretrain, mmdet and '
                'mmsegmentation',
    long_description=open(os.path.join(HERE, 'README.md')).read()
    if os.path.exists(os.path.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tools', 'configs')),
    package_data={'mmsgformer': MIM_PACKAGE_DATA},
    python_requires='>=3.10',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options=_build_options(),
    zip_safe=False,
    license='Apache-2.0',
)
