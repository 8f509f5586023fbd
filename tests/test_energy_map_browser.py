"""Browser test of the REOAC energy-map viewer: a real JupyterLab, headless Debian Chromium (Playwright).

A micro REOAC run (one iteration) is trained into a temp dir; Chromium opens a copy of
`viewers/energy_map.ipynb`, runs all cells, moves the denoising-step slider and checks that the
relation heatmap and its title (step, chosen operator) change, with no error output.
"""
import shutil
from pathlib import Path
import pytest
from jupyter_lab import CHROME_ARGS, CHROMIUM, browser_missing, jupyter_lab, open_and_run
from halting_lab.models.reoac import OPERATORS
from halting_lab.train import reoac as R
from test_reoac import _micro

ROOT = Path(__file__).resolve().parents[1]
Z = ("() => { const p = document.querySelector('.js-plotly-plot'); "
     "return p && p.data && p.data[0] ? JSON.stringify(p.data[0].z) : null; }")


@pytest.mark.skipif(browser_missing('anywidget') is not None, reason=browser_missing('anywidget') or '')
@pytest.mark.timeout(300)
def test_energy_map_viewer_in_jupyterlab(tmp_path):
    "Open viewers/energy_map.ipynb on a trained run, run all, move the step slider: the heatmap changes."
    from playwright.sync_api import sync_playwright
    root = tmp_path / 'lab'
    root.mkdir()
    R.train_reoac(_micro(root / 'runs', num_iterations=1), quiet=True)      # root/runs/reoac_tiny/<ts>/
    shutil.copy(ROOT / 'nbs' / 'viewers' / 'energy_map.ipynb', root / 'energy_map.ipynb')
    with jupyter_lab(tmp_path, root, OMP_NUM_THREADS=1) as (url, token, log):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
            page = browser.new_page(viewport={'width': 1400, 'height': 1100})
            open_and_run(page, url, token, 'energy_map.ipynb')
            try: page.wait_for_function(f"() => ({Z})() !== null && ({Z})() !== '[]'", timeout=150_000)
            except Exception:
                art = ROOT / 'test-artifacts'
                art.mkdir(exist_ok=True)
                page.screenshot(path=str(art / 'energy_map_failed.png'), full_page=True)
                raise
            page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext"
                                   ".kernelDisplayStatus === 'idle'", timeout=90_000)
            z0 = page.evaluate(Z)
            title0 = page.evaluate("() => document.querySelector('.js-plotly-plot').layout.title.text")
            page.locator('.widget-hslider .noUi-handle').first.focus()
            page.keyboard.press('ArrowRight')                                       # denoising step 0 -> 1
            page.wait_for_function(f"(z) => ({Z})() !== z", arg=z0, timeout=20_000)
            title1 = page.evaluate("() => document.querySelector('.js-plotly-plot').layout.title.text")
            errors = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
            err = errors.all_inner_texts() if errors.count() else []
            browser.close()
    assert title0.startswith('step 0:') and title1.startswith('step 1:'), (title0, title1)
    assert any(op in title0 for op in OPERATORS)
    assert not err, err[:2]
