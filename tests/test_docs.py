"""The offline documentation build (`python -m halting_lab.docs build`, what `make docs` runs).

One build (through the command line, as `make docs` does) into a temp dir, with the curves notebook executed and a fake
executed run notebook in a temp runs dir; then: the index, one page per notebook, API docs of exported functions, figures,
the run page, and no leftover nbdev/quarto directives.
"""
import base64, json, re, subprocess, sys
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
    r = subprocess.run([sys.executable, '-m', 'halting_lab.docs', 'build', '--out', str(out), '--runs', str(tmp / 'runs'),
                        '--execute', r'^viewers/curves', '--workers', '4'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout

@pytest.mark.timeout(600)
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

@pytest.mark.timeout(600)
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

@pytest.mark.timeout(600)
def test_executed_figures_and_runs(site):
    out, _ = site
    curves = (out / 'viewers' / 'curves.html').read_text()
    assert 'data:image/png;base64' in curves                                               # executed: the matplotlib figure is on the page
    run = out / 'runs' / 'docs_demo' / 'train.html'
    assert run.exists() and 'data:image/png;base64' in run.read_text()
    assert 'runs/docs_demo/train.html' in (out / 'index.html').read_text()

@pytest.mark.timeout(600)
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
