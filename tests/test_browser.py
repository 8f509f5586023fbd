"""Browser test of the halting-step explorer: a real JupyterLab, headless Debian Chromium driven by Playwright.

The explorer's few-second demo run (`quick_demo_run`, recipe `QUICK_DEMO`) is trained into a temp runs dir;
JupyterLab is started on a free localhost port with a token, Chromium opens `halting_explorer.ipynb` (a copy), runs all
cells, moves the sample and step sliders and checks that the plotly heatmap data in the DOM changes (input and halting
map with the sample, replay panels with the step), that the static panels are displayed and that no error output
appears. A screenshot goes to `test-artifacts/` (git-ignored).
"""
import shutil
from pathlib import Path
import pytest
from jupyter_lab import ARTIFACTS, CHROME_ARGS, CHROMIUM, browser_missing, jupyter_lab, open_and_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(browser_missing('anywidget') is not None, reason=browser_missing('anywidget') or '')

def _make_run(tmp: Path) -> Path:
    "The explorer's quick demo run under tmp/runs, whose examples 0 and 1 have different halting maps (checked here)."
    from halting_lab.viewers.explorer import quick_demo_run, InferenceCache, run_data_dir
    run = quick_demo_run(tmp)
    assert (run / 'checkpoints' / 'last.ckpt').exists() and run.parent == tmp / 'runs'
    res = InferenceCache(disk=False).get(run / 'checkpoints' / 'last.ckpt', run_data_dir(run), 'test', device='cpu')
    assert (res.halting_steps[0] != res.halting_steps[1]).any(), 'precondition: the halting maps of examples 0 and 1 are equal'
    return run

@pytest.fixture
def lab(tmp_path):
    run = _make_run(tmp_path)
    root = tmp_path / 'lab'; root.mkdir()
    shutil.copy(ROOT / 'nbs' / 'viewers' / 'halting_explorer.ipynb', root / 'halting_explorer.ipynb')
    with jupyter_lab(tmp_path, root, start_timeout=60, HALTING_LAB_RUNS=tmp_path / 'runs') as (url, token, log):
        yield dict(url=url, token=token, run=run, log=log)

Z = "(i) => { const p = document.querySelector('.js-plotly-plot'); return p && p.data && p.data[i] ? JSON.stringify(p.data[i].z) : null; }"

@pytest.mark.timeout(240)
def test_explorer_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        page = browser.new_page(viewport={'width': 1400, 'height': 1100})
        open_and_run(page, lab['url'], lab['token'], 'halting_explorer.ipynb', timeout_ms=60_000)
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
