"""tools/gpu_check.py: the dry run on the CPU, its helpers, and imports without OpenMMLab codebases.

The dry run is the same script a GPU machine runs, with every CUDA stage reported as skipped and
the benchmark code run on tiny models, so the script cannot rot between GPU loans.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))

import gpu_check  # noqa: E402


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(REPO)] + [p for p in env.get('PYTHONPATH', '')
                                                       .split(os.pathsep) if p])
    return env


# Installed as sitecustomize.py in front of PYTHONPATH: every Python process of the dry run
# (the script and its benchmark worker) then fails to import these modules, as on a bare GPU
# machine that has mmengine from wheels and none of the OpenMMLab codebases. OpenCV and
# matplotlib are blocked too: mmengine lists them, but mmengine.model/.registry/.logging do not
# import them.
BLOCKED = ('mmcv', 'mmdet', 'mmseg', 'mmpretrain', 'cv2', 'matplotlib')
_BLOCKER = textwrap.dedent("""\
    import importlib.abc, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {blocked!r}:
                raise ImportError(f'{{name}} is blocked by tests/test_gpu_check.py')
            return None

    sys.meta_path.insert(0, _Block())
""")


def test_dry_run_without_openmmlab_codebases(tmp_path):
    """The whole script on the CPU; SGFormer builds, runs forward and forward+backward in float32
    and bfloat16 autocast with mmcv, mmdet, mmseg, mmpretrain, cv2 and matplotlib unimportable."""
    site = tmp_path / 'blocker'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(_BLOCKER.format(blocked=BLOCKED))
    env = _env()
    env['PYTHONPATH'] = os.pathsep.join([str(site), env['PYTHONPATH']])
    probe = subprocess.run([sys.executable, '-c', 'import mmcv'], capture_output=True, text=True,
                           env=env, timeout=60)
    assert probe.returncode != 0 and 'blocked by tests/test_gpu_check.py' in probe.stderr
    out = tmp_path / 'report'
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'gpu_check.py'), '--dry-run',
                           '--out', str(out), '--work', str(tmp_path / 'work')],
                          capture_output=True, text=True, timeout=300, cwd=str(REPO), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / 'report.json').read_text())
    assert not any(report['environment']['codebases'].values())
    stages = report['stages']
    assert list(stages) == list(gpu_check.STAGES)
    assert stages['wheels']['status'] == 'skipped: no --wheels DIR'
    for name in ('build', 'tests', 'memcheck'):
        assert stages[name]['status'] == gpu_check.NO_GPU, name
    assert 'FORCE_CUDA=1' in stages['build']['command']
    assert 'TORCH_CUDA_ARCH_LIST=' in stages['build']['command']
    assert stages['benchmark']['status'].startswith(gpu_check.NO_GPU), stages['benchmark']
    rows = report['benchmark']['rows']
    sg = [r for r in rows if r['model'] == 'sgformer-tiny']
    # two sizes x two precisions, each measured
    assert {(r['size'], r['precision']) for r in sg} == {
        ('64x64', 'fp32'), ('64x64', 'bf16'), ('64x96', 'fp32'), ('64x96', 'bf16')}
    for r in sg:
        assert not r.get('error'), r
        assert r['seconds'] > 0 and len(r['times']) == 1 and r['params_m'] > 0
    profiles = report['benchmark']['profiles']
    assert [p['model'] for p in profiles] == ['sgformer-tiny', 'swin-tiny-test'][:len(profiles)]
    assert profiles and profiles[0]['wall_ms'] > 0 and profiles[0]['kernels_per_step'] == 0
    assert profiles[0]['busy_share'] is None  # no GPU: no kernels, no busy time
    md = (out / 'report.md').read_text()
    assert '## Profile' in md and '| sgformer-tiny | 64x96, 1 | 0 | - |' in md
    swin = [r for r in rows if r['model'] == 'swin-tiny-test']
    if report['benchmark']['swin_source'].startswith('none'):
        assert not swin
    else:  # timm is installed
        assert len(swin) == 4 and all(r['seconds'] > 0 for r in swin), swin
    md = (out / 'report.md').read_text()
    assert md.startswith('# mmsgformer GPU check (dry run)')
    assert '| model | params (M) |' in md and '| sgformer-tiny |' in md
    assert md in proc.stdout  # the markdown is printed


def test_arch_list_and_wheel_names():
    assert gpu_check.arch_list([(9, 0)]) == '9.0'
    assert gpu_check.arch_list([(9, 0), (8, 0), (9, 0)]) == '8.0;9.0'
    with pytest.raises(ValueError, match='capabilities is empty'):
        gpu_check.arch_list([])
    assert gpu_check.wheel_distribution('mmengine-0.10.7-py3-none-any.whl') == (
        'mmengine', '0.10.7')
    assert gpu_check.wheel_distribution(
        'markdown_it_py-4.0.0-py3-none-any.whl') == ('markdown_it_py', '4.0.0')
    with pytest.raises(ValueError, match='is not a wheel file name'):
        gpu_check.wheel_distribution('mmengine-0.10.7.tar.gz')
    assert gpu_check.installed_version('pytest') is not None
    assert gpu_check.installed_version('markdown_it_py_not_a_package') is None


def test_find_cuda_home_prefers_the_environment(tmp_path):
    home = tmp_path / 'cuda'
    (home / 'bin').mkdir(parents=True)
    (home / 'bin' / 'nvcc').write_text('')
    assert gpu_check.find_cuda_home({'CUDA_HOME': str(home), 'PATH': ''}) == str(home)
    # a CUDA_HOME without nvcc is not taken
    other = gpu_check.find_cuda_home({'CUDA_HOME': str(tmp_path), 'PATH': ''})
    assert other != str(tmp_path)


def test_parse_junit(tmp_path):
    xml = tmp_path / 'j.xml'
    xml.write_text(textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?>
        <testsuites><testsuite name="pytest" tests="4">
          <testcase classname="tests.test_op_devices" name="test_a[cuda]"/>
          <testcase classname="tests.test_op_devices" name="test_b[cuda]">
            <failure message="AssertionError: 3.2e-05 &lt;= 1e-12">trace</failure></testcase>
          <testcase classname="tests.test_op_devices" name="test_c[cuda]">
            <skipped message="no CUDA device visible"/></testcase>
          <testcase classname="tests.test_backbone_cuda" name="test_d">
            <error message="fixture broke"/></testcase>
        </testsuite></testsuites>"""))
    j = gpu_check.parse_junit(xml)
    assert (j['tests'], j['passed'], j['failed'], j['errors'], j['skipped']) == (4, 1, 1, 1, 1)
    assert j['failures'][0] == {'test': 'tests.test_op_devices::test_b[cuda]',
                                'message': 'AssertionError: 3.2e-05 <= 1e-12'}
    assert j['skips'] == {'no CUDA device visible': 1}


def test_parse_pytest_log():
    text = textwrap.dedent("""\
        tests/test_op_devices.py::test_a[cuda] PASSED                     [  1%]
        tests/test_op_devices.py::test_b[cuda] FAILED                     [  2%]
        tests/test_op_devices.py::test_c[cpu] SKIPPED (no CUDA device)    [  3%]
        tests/test_backbone_cuda.py::test_d[s-800x1344] ERROR             [  4%]
        FAILED tests/test_op_devices.py::test_b[cuda] - AssertionError
        """)
    j = gpu_check.parse_pytest_log(text)
    assert (j['tests'], j['passed'], j['failed'], j['errors'], j['skipped']) == (4, 1, 1, 1, 1)
    assert [f['test'] for f in j['failures']] == ['tests/test_op_devices.py::test_b[cuda]',
                                                  'tests/test_backbone_cuda.py::test_d[s-800x1344]']


def test_parse_pytest_log_names_the_test_that_crashed_and_reads_xdist_lines():
    """The first H200 run: a segfault in test_bad_inputs[cpu] ended pytest without its XML."""
    crashed = textwrap.dedent("""\
        tests/test_op_devices.py::test_opcheck[cuda] PASSED                [ 63%]
        tests/test_op_devices.py::test_bad_inputs[cpu] Fatal Python error: Segmentation fault

        Current thread 0x00007f33afc06140 (most recent call first):
        """)
    j = gpu_check.parse_pytest_log(crashed)
    assert (j['tests'], j['passed'], j['failed']) == (2, 1, 1)
    assert j['failures'] == [{'test': 'tests/test_op_devices.py::test_bad_inputs[cpu]',
                              'message': 'the test process died: Segmentation fault'}]
    xdist = textwrap.dedent("""\
        [gw1] [ 50%] PASSED tests/test_op_devices.py::test_a[cuda]
        [gw0] [100%] FAILED tests/test_op_devices.py::test_b[cpu]
        """)
    j = gpu_check.parse_pytest_log(xdist)
    assert (j['tests'], j['passed'], j['failed']) == (2, 1, 1)
    assert j['failures'][0]['test'] == 'tests/test_op_devices.py::test_b[cpu]'


def test_tests_stage_isolates_crashing_tests_where_xdist_is_installed(monkeypatch):
    monkeypatch.setattr(gpu_check, '_findable', lambda module: module == 'xdist')
    assert gpu_check.isolating_args()[:2] == ['-n', '2']
    monkeypatch.setattr(gpu_check, '_findable', lambda module: False)
    assert gpu_check.isolating_args() == []


def test_profile_table():
    rows = [dict(model='sgformer-s', size='800x1344', batch=2, kernels_per_step=2995.0,
                 device_busy_ms=61.25, wall_ms=240.0, busy_share=0.2552),
            dict(model='swin-t', size='800x1344', batch=2, error='OutOfMemoryError: boom')]
    lines = gpu_check.profile_table(rows).splitlines()
    assert lines[2] == '| sgformer-s | 800x1344, 2 | 2995 | 61.2 | 240.0 | 0.26 |'
    assert lines[3].startswith('| swin-t | 800x1344, 2 | error: OutOfMemoryError: boom |')


def test_benchmark_table_ratios():
    def cell(model, size, prec, seconds, mode):
        return dict(model=model, size=size, precision=prec, seconds=seconds, mode=mode,
                    batch=128 if size == '224' else 2, peak_mib=1000.0, params_m=28.3)

    rows = [cell('swin-t', '224', 'fp32', 0.1, 'inference'),
            cell('swin-t', '224', 'bf16', 0.05, 'inference'),
            cell('sgformer-s', '224', 'fp32', 0.2, 'inference'),
            cell('sgformer-s', '224', 'bf16', 0.1, 'inference'),
            cell('swin-t', '800x1344', 'fp32', 0.3, 'train'),
            dict(cell('sgformer-s', '800x1344', 'fp32', None, 'train'), error='OOM'),
            cell('swin-t', '800x1344', 'bf16', 0.2, 'train'),
            cell('sgformer-s', '800x1344', 'bf16', 0.4, 'train')]
    table = gpu_check.benchmark_table(rows).splitlines()
    assert table[0].startswith(
        '| model | params (M) | 224 b128 inference fp32 img/s (speed vs swin-t) |')
    assert table[2] == ('| swin-t | 28.3 | 1280 (1.00) | 2560 (1.00) | 1000/1000 | '
                        '0.300 (1.00) | 0.200 (1.00) | 1000/1000 |')
    assert table[3] == ('| sgformer-s | 28.3 | 640 (0.50) | 1280 (0.50) | 1000/1000 | '
                        'error: OOM | 0.400 (0.50) | -/1000 |')


def test_gpu_wheels_script_is_valid_bash():
    proc = subprocess.run(['bash', '-n', str(REPO / 'tools' / 'gpu_wheels.sh')],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
