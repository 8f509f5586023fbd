"""The offline documentation build (`python -m halting_lab.docs build`, what `make docs` runs).

One strict build (through the command line, as `make docs` does) into a temp dir, with the viewer notebooks (halting
explorer, curves) executed and a fake executed run notebook in a temp runs dir; then: 0 errors, the index, one page per
notebook, API docs of exported functions, figures (the explorer's static panels of the run it trained), the run page,
the showcase, and no leftover nbdev/quarto directives. Separately, nbdev's own pre-processing for `nbdev_docs`
(`nbdev_proc_nbs`) on a copy of the project, for users who have quarto.
"""
import base64, json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = base64.b64encode(bytes.fromhex('89504e470d0a1a0a0000000d4948445200000001000000010806000000'
                                     '1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082')).decode()

def _run_notebook(path: Path):
    "A minimal executed notebook as papermill leaves it in runs/<run_id>/ (markdown, code, PNG output)."
    nb = {'nbformat': 4, 'nbformat_minor': 5, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
                                                          'papermill': {'parameters': {'run_id': 'docs_demo'}}},
          'cells': [{'cell_type': 'markdown', 'id': 'a', 'metadata': {}, 'source': '# Training run docs_demo\n\nexecuted by papermill'},
                    {'cell_type': 'code', 'id': 'b', 'metadata': {'tags': ['parameters']}, 'execution_count': 1, 'source': 'run_id = "docs_demo"',
                     'outputs': []},
                    {'cell_type': 'code', 'id': 'c', 'metadata': {}, 'execution_count': 2, 'source': 'plot_curves()',
                     'outputs': [{'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': PNG, 'text/plain': '<Figure>'}}]}]}
    path.parent.mkdir(parents=True, exist_ok=True); path.write_text(json.dumps(nb))

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('docs')
    _run_notebook(tmp / 'runs' / 'docs_demo' / 'train.ipynb')
    out = tmp / 'site'
    env = dict(os.environ, HALTING_LAB_RUNS=str(tmp / 'runs'))   # the executed explorer finds no trained run here: it trains its quick one
    r = subprocess.run([sys.executable, '-m', 'halting_lab.docs', 'build', '--out', str(out), '--runs', str(tmp / 'runs'), '--strict',
                        '--execute', r'^viewers/(curves|halting_explorer)\.ipynb$', '--workers', '4'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout

@pytest.mark.timeout(900)
def test_build_without_errors(site):
    "--strict fails on any notebook error; the log also says so per page (`!!`) and in the summary line."
    _, log = site
    assert not re.search(r'^\s*!!', log, re.M), log[-3000:]
    m = re.search(r'^docs: (\d+) pages -> .*index\.html in [\d.]+s(.*)$', log, re.M)
    assert m and int(m.group(1)) >= 5 and 'with errors' not in m.group(2), log[-3000:]
    for nb in ('viewers/halting_explorer.ipynb', 'viewers/curves.ipynb'):
        assert re.search(rf'^\s*ok {re.escape(nb)} ', log, re.M), f'{nb} not built: {log[-2000:]}'

@pytest.mark.timeout(900)
def test_index_and_one_page_per_notebook(site):
    out, log = site
    from halting_lab.docs import find_notebooks, page_path
    index = (out / 'index.html').read_text()
    rels = find_notebooks(ROOT / 'nbs')
    assert len(rels) >= 5
    for rel in rels:
        page = out / page_path(rel).with_suffix('.html')
        assert page.exists(), f'no page for {rel}'
        if rel != Path('index.ipynb'): assert page_path(rel).with_suffix('.html').as_posix() in index, f'index does not link {rel}'
    assert (out / 'search' / 'search_index.json').exists()

@pytest.mark.timeout(900)
def test_api_docs_of_exported_functions(site):
    out, _ = site
    core = (out / 'core.html').read_text()
    for name in ('atomic_write_bytes', 'runs_root', 'HaltingOutput'):
        assert re.search(rf'<h3 id="{name.lower()}"', core, re.I) or re.search(rf'<h3[^>]*>{name}', core), f'no API section for {name}'
    assert 'through a temp file + rename' in core                                          # docstring rendered
    assert 'destination file' in core                                                      # parameter comment rendered
    ex = (out / 'viewers' / 'halting_explorer.html').read_text()
    for name in ('HaltingExplorer', 'sample_figure', 'run_inference', 'InferenceCache'): assert name in ex
    for page in (core, ex):
        assert '#| export' not in page and '#| hide' not in page and 'output: asis' not in page  # directives consumed
        assert 'target="_blank" style=' not in page.replace('target="_blank" style="float', '')  # quarto attributes removed
        assert 'halting-lab.github.io' not in page                                           # doc links made relative

@pytest.mark.timeout(900)
def test_executed_figures_and_runs(site):
    out, _ = site
    curves = (out / 'viewers' / 'curves.html').read_text()
    assert curves.count('data:image/png;base64') >= 2                                     # executed: example figure + the demo's static curves
    ex = (out / 'viewers' / 'halting_explorer.html').read_text()
    from halting_lab.docs import WIDGET_NOTE
    assert 'Interactive widget (needs a live kernel)' in ex and WIDGET_NOTE[:40] in ex      # live widget replaced by the note
    assert 'Static panels of <code>quick_demo/last.ckpt</code>' in ex                       # ... and the run's static panels are there
    assert ex.count('data:image/png;base64') >= 3                                          # dataset panel + at least two examples
    assert 'Traceback' not in ex and 'Built with errors' not in ex
    run = out / 'runs' / 'docs_demo' / 'train.html'
    assert run.exists() and 'data:image/png;base64' in run.read_text()
    assert 'runs/docs_demo/train.html' in (out / 'index.html').read_text()

@pytest.mark.timeout(900)
def test_showcase_page(site):
    "nbs/showcase/ (executed experiment notebooks committed with outputs): shown as they are, listed first, Pareto plot on the page."
    out, _ = site
    from halting_lab.docs import find_showcase
    shows = find_showcase(ROOT / 'nbs')
    assert Path('showcase/compare_halting_sudoku.ipynb') in shows
    index = (out / 'index.html').read_text()
    for s in shows:
        page = (out / s.with_suffix('.html')).read_text()
        assert 'data:image/png;base64' in page and 'Pareto' in page                        # stored figure, not re-executed
        assert s.with_suffix('.html').as_posix() in index
    assert index.index('showcase/') < index.index('viewers/')                              # the showcase comes first

# ---------------------------------------------------------------------------------------------------------------- nbdev_docs
QUARTO = shutil.which('quarto')

@pytest.fixture(scope='module')
def nbdev_proc(tmp_path_factory):
    """`nbdev_proc_nbs` (nbdev's processing step of `nbdev_docs`, before `quarto render`) on a copy of the project with a few
    notebooks. Without quarto, a `quarto` on PATH that records any call stands in for nbdev's "is quarto installed" check
    (otherwise nbdev tries to download it)."""
    tmp = tmp_path_factory.mktemp('nbdev_docs'); proj = tmp / 'proj'
    shutil.copytree(ROOT / 'halting_lab', proj / 'halting_lab', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(ROOT / 'settings.ini', proj)
    nbs = ['index.ipynb', '00_core.ipynb', 'viewers/halting_explorer.ipynb', '_quarto.yml', 'nbdev.yml', 'styles.css']
    for f in nbs:
        (proj / 'nbs' / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy(ROOT / 'nbs' / f, proj / 'nbs' / f)
    env = dict(os.environ, HALTING_LAB_RUNS=str(tmp / 'runs'))
    calls = tmp / 'quarto_calls.txt'
    if not QUARTO:
        (tmp / 'bin').mkdir(); q = tmp / 'bin' / 'quarto'
        q.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n'); q.chmod(0o755)
        env['PATH'] = f"{tmp / 'bin'}{os.pathsep}{env['PATH']}"
    r = subprocess.run([str(Path(sys.executable).parent / 'nbdev_proc_nbs'), '--n_workers', '1'], cwd=proj, env=env,
                       capture_output=True, text=True, timeout=600)
    return dict(proj=proj, r=r, calls=calls, env=env)

@pytest.mark.timeout(600)
def test_nbdev_proc_nbs_for_quarto_users(nbdev_proc):
    "nbdev's own docs pre-processing still works on these notebooks: processed copies in _proc/, directives applied, API docs."
    proj, r = nbdev_proc['proj'], nbdev_proc['r']
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not nbdev_proc['calls'].exists(), 'nbdev_proc_nbs ran quarto'          # processing only; quarto renders later
    proc = proj / '_proc'
    for f in ('index.ipynb', '00_core.ipynb', 'viewers/halting_explorer.ipynb', '_quarto.yml'):
        assert (proc / f).exists(), f'nbdev_proc_nbs did not write _proc/{f}'
    assert (proj / 'nbs' / 'sidebar.yml').exists()
    core = json.loads((proc / '00_core.ipynb').read_text())
    first = ''.join(core['cells'][0]['source'])
    assert core['cells'][0]['cell_type'] == 'raw' and first.startswith('---') and 'title:' in first    # frontmatter for quarto
    src = [''.join(c['source']) for c in core['cells']]
    assert not any(s.lstrip().startswith('#| hide') for s in src)                      # hidden cells dropped
    docs = '\n'.join(''.join(o['data']['text/markdown']) for c in core['cells'] for o in c.get('outputs', [])
                     if 'text/markdown' in o.get('data', {}))
    for name in ('atomic_write_bytes', 'runs_root', 'HaltingOutput'): assert f'### {name}' in docs, name   # show_doc ran
    ex = json.loads((proc / 'viewers' / 'halting_explorer.ipynb').read_text())
    exdocs = json.dumps(ex)
    for name in ('HaltingExplorer', 'show_static', 'quick_demo_run'): assert f'### {name}' in exdocs, name

@pytest.mark.skipif(QUARTO is None, reason='quarto is not installed (its PyPI package downloads the binary at build time, '
                    'which fails offline; no Debian or npm package): the quarto render step of nbdev_docs cannot run here')
@pytest.mark.timeout(600)
def test_quarto_render(nbdev_proc):
    "With quarto installed: the rest of nbdev_docs, quarto rendering the processed notebooks."
    proc = nbdev_proc['proj'] / '_proc'
    r = subprocess.run([QUARTO, 'render', '--no-cache'], cwd=proc, env=nbdev_proc['env'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (proc / '_docs' / 'core.html').exists()
