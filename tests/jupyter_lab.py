"""One real JupyterLab + headless Chromium for the browser tests (explorer, ARC browser, energy map).

`browser_missing(*modules)` is the skip reason (or None); `jupyter_lab(tmp_path, root, **env)` starts
JupyterLab on a free localhost port with a token and every cell rendered (no windowing), yields
`(url, token, log_path)` and stops it; `open_and_run(page, url, token, notebook)` opens a notebook in
Chromium, waits for an idle kernel and runs all cells.
"""
import contextlib, json, os, secrets, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = '/usr/bin/chromium'
ARTIFACTS = ROOT / 'test-artifacts'
CHROME_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
               '--disable-sync', '--no-first-run']


def browser_missing(*modules):
    "Why the browser tests cannot run here (None when they can)."
    if not Path(CHROMIUM).exists():
        return f'{CHROMIUM} not found (Debian chromium; `make sysdeps` installs it as root)'
    for mod in ('playwright', 'jupyterlab', 'ipywidgets', 'plotly') + tuple(modules):
        try: __import__(mod)
        except ImportError: return f'python package {mod} not installed (pip install -e ".[dev]")'
    return None


def free_port():
    "A free TCP port on localhost."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(tmp_path: Path, root: Path, start_timeout: float = 90, **env):
    "A JupyterLab server serving `root`; yields (url, token, log path); extra `env` for its kernels."
    st = tmp_path / 'lab-settings' / '@jupyterlab' / 'notebook-extension'
    st.mkdir(parents=True, exist_ok=True)   # JupyterLab 4 renders only the cells in view unless told
    (st / 'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))
    port, token = free_port(), secrets.token_hex(16)
    full_env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / 'jcfg'), JUPYTER_RUNTIME_DIR=str(tmp_path / 'jrt'),
                    PYTHONWARNINGS='ignore', **{k: str(v) for k, v in env.items()})
    log_path = tmp_path / 'lab.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', f'--port={port}', '--ip=127.0.0.1',
             f'--ServerApp.token={token}', '--allow-root', f'--ServerApp.root_dir={root}',
             '--LabApp.expose_app_in_browser=True', f'--LabApp.user_settings_dir={tmp_path / "lab-settings"}',
             '--ServerApp.disable_check_xsrf=True', '--LabApp.news_url=',
             '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
            stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=root)
        url = f'http://127.0.0.1:{port}'
        try:
            t0 = time.time()
            while True:
                try:
                    urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2)
                    break
                except Exception:
                    if proc.poll() is not None or time.time() - t0 > start_timeout:
                        pytest.fail(f'JupyterLab did not start:\n{log_path.read_text()[-3000:]}')
                    time.sleep(0.3)
            yield url, token, log_path
        finally:
            proc.terminate()
            try: proc.wait(10)
            except subprocess.TimeoutExpired: proc.kill()


IDLE = ("() => { const s = window.jupyterapp.shell.currentWidget; return s && s.sessionContext && "
        "s.sessionContext.session && s.sessionContext.session.kernel && "
        "s.sessionContext.session.kernel.connectionStatus === 'connected' && "
        "s.sessionContext.kernelDisplayStatus === 'idle'; }")


def open_and_run(page, url: str, token: str, notebook: str, timeout_ms: int = 90_000):
    "Open `notebook` in JupyterLab, accept a kernel dialog if one shows, wait for an idle kernel, run all cells."
    page.goto(f'{url}/lab/tree/{notebook}?token={token}')
    page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')",
                           timeout=timeout_ms)
    try: page.locator('.jp-Dialog .jp-mod-accept').click(timeout=10_000)
    except Exception: pass
    page.wait_for_function(IDLE, timeout=timeout_ms)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
