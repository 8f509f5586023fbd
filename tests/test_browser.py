"""Browser test of the halting-step explorer: a real JupyterLab, headless Debian Chromium driven by Playwright.

The explorer's few-second demo run (`quick_demo_run`: 7x7 mazes, ACT-RNN, 4 epochs) is trained into a temp runs dir;
JupyterLab is started on a free localhost port with a token, Chromium opens `halting_explorer.ipynb` (a copy), runs all
cells, moves the sample and step sliders and checks that the plotly heatmap data in the DOM changes (input and halting
map with the sample, replay panels with the step), that the static panels are displayed and that no error output
appears. A screenshot goes to `test-artifacts/` (git-ignored).
"""
import json, os, shutil, socket, subprocess, sys, time, secrets, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = '/usr/bin/chromium'
ARTIFACTS = ROOT / 'test-artifacts'
CHROME_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
               '--disable-sync', '--no-first-run']

def _missing():
    if not Path(CHROMIUM).exists():
        return f'{CHROMIUM} not found (Debian chromium; `make sysdeps` installs it as root)'
    for mod in ('playwright', 'jupyterlab', 'anywidget', 'ipywidgets', 'plotly'):
        try: __import__(mod)
        except ImportError: return f'python package {mod} not installed (pip install -e ".[dev]")'
    return None

pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or '')

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _make_run(tmp: Path) -> Path:
    "The explorer's quick demo run under tmp/runs, whose examples 0 and 1 have different halting maps (checked here)."
    from halting_lab.viewers.explorer import quick_demo_run, InferenceCache
    run = quick_demo_run(tmp)
    assert (run / 'checkpoints' / 'last.ckpt').exists() and run.parent == tmp / 'runs'
    res = InferenceCache(disk=False).get(run / 'checkpoints' / 'last.ckpt', tmp / 'data' / 'maze-7x7-quick', 'test', device='cpu')
    assert (res.halting_steps[0] != res.halting_steps[1]).any(), 'precondition: the halting maps of examples 0 and 1 are equal'
    return run

@pytest.fixture
def lab(tmp_path):
    run = _make_run(tmp_path)
    root = tmp_path / 'lab'; root.mkdir()
    shutil.copy(ROOT / 'nbs' / 'viewers' / 'halting_explorer.ipynb', root / 'halting_explorer.ipynb')
    # JupyterLab 4 renders only the cells in view (windowing): render them all so outputs are in the DOM
    st = tmp_path / 'lab-settings' / '@jupyterlab' / 'notebook-extension'; st.mkdir(parents=True)
    (st / 'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, HALTING_LAB_RUNS=str(tmp_path / 'runs'), JUPYTER_CONFIG_DIR=str(tmp_path / 'jcfg'),
               JUPYTER_RUNTIME_DIR=str(tmp_path / 'jrt'), PYTHONWARNINGS='ignore')
    log = open(tmp_path / 'lab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyter', 'lab', '--no-browser', f'--port={port}', '--ip=127.0.0.1',
                             f'--ServerApp.token={token}', '--allow-root', f'--ServerApp.root_dir={root}',
                             '--LabApp.expose_app_in_browser=True', f'--LabApp.user_settings_dir={tmp_path / "lab-settings"}', '--ServerApp.disable_check_xsrf=True',
                             '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f'http://127.0.0.1:{port}'
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
        except Exception:
            if proc.poll() is not None or time.time() - t0 > 60:
                proc.kill(); pytest.fail(f'JupyterLab did not start:\n{(tmp_path / "lab.log").read_text()[-3000:]}')
            time.sleep(0.3)
    yield dict(url=url, token=token, run=run, log=tmp_path / 'lab.log')
    proc.terminate()
    try: proc.wait(10)
    except subprocess.TimeoutExpired: proc.kill()
    log.close()

Z = "(i) => { const p = document.querySelector('.js-plotly-plot'); return p && p.data && p.data[i] ? JSON.stringify(p.data[i].z) : null; }"

@pytest.mark.timeout(240)
def test_explorer_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        page = browser.new_page(viewport={'width': 1400, 'height': 1100})
        page.goto(f"{lab['url']}/lab/tree/halting_explorer.ipynb?token={lab['token']}")
        page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')", timeout=60_000)
        # the notebook stores no kernelspec (nbdev_clean): accept JupyterLab's "Select Kernel" dialog (Python 3)
        try: page.locator('.jp-Dialog .jp-mod-accept').click(timeout=15_000)
        except Exception: pass  # no dialog: kernel chosen already
        # kernel ready, then run every cell (tests included) exactly as a user would with "Run All"
        page.wait_for_function("() => { const s = window.jupyterapp.shell.currentWidget; return s && s.sessionContext && "
                               "s.sessionContext.session && s.sessionContext.session.kernel && "
                               "s.sessionContext.session.kernel.connectionStatus === 'connected' && s.sessionContext.kernelDisplayStatus === 'idle'; }",
                               timeout=60_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        try: page.wait_for_function(f"() => ({Z})(0) !== null", timeout=120_000)
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True); page.screenshot(path=str(ARTIFACTS / 'halting_explorer_failed.png'), full_page=True)
            raise
        page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayStatus === 'idle'", timeout=60_000)
        page.locator('.js-plotly-plot').first.scroll_into_view_if_needed()
        z_in0, z_cum0 = page.evaluate(Z, 0), page.evaluate(Z, 5)
        z_halt0 = page.evaluate(Z, 3)                                            # trace 3: halting steps per cell
        status = page.locator('.widget-html').first.inner_text()
        assert 'quick_demo' in status, status  # the explorer picked the trained run
        assert page.locator('.jp-RenderedImage img').count() >= 2                # show_static: dataset + example PNGs

        # sample slider (first slider of the explorer): next example -> the input heatmap changes
        sliders = page.locator('.widget-hslider .noUi-handle')
        sliders.nth(0).focus(); page.keyboard.press('ArrowRight')
        page.wait_for_function(f"(z) => ({Z})(0) !== z", arg=z_in0, timeout=15_000)
        z_halt1 = page.evaluate(Z, 3)
        assert z_halt0 is not None and z_halt1 != z_halt0, 'the halting map did not change with the sample'
        z_cum1 = page.evaluate(Z, 5)
        # step slider: replay one step back -> cumulative halting probability (or step prediction) changes
        z_step = page.evaluate(Z, 4)
        sliders.nth(1).focus(); page.keyboard.press('ArrowLeft'); page.keyboard.press('ArrowLeft')
        page.wait_for_function(f"([a, b]) => ({Z})(5) !== a || ({Z})(4) !== b", arg=[z_cum1, z_step], timeout=15_000)
        title = page.evaluate("() => document.querySelector('.js-plotly-plot').layout.title.text")
        assert 'step t =' in title, title

        errors = page.locator('[data-mime-type="application/vnd.jupyter.error"], .jp-OutputArea-output.jp-mod-error')
        err_text = errors.all_inner_texts() if errors.count() else []
        page.screenshot(path=str(ARTIFACTS / 'halting_explorer.png'), full_page=False)
        browser.close()
    assert not err_text, f'error output in the notebook: {err_text[:2]}'
    assert 'Error' not in status, status
    assert (ARTIFACTS / 'halting_explorer.png').stat().st_size > 10_000
