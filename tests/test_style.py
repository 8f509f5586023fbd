"""The notebook style the docs depend on: code lines a docs page shows whole, cells that fit a screen.

    python tests/test_style.py            # list every offending cell/line, per notebook
    python tests/test_style.py nbs/x.ipynb

The showcase pages are executed copies of `nbs/experiments/compare_halting.ipynb`, so they are
checked through that notebook, not themselves.
"""
import ast, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINE = 120      # characters: what a rendered docs page shows without a scroll bar
MAX_CELL = 40       # lines of code in one cell: one screen
JOINED = re.compile(r';\s*(?:[A-Za-z_][\w.\[\]\'"]*\s*[-+*/]?=(?!=)|return\b|if\b|for\b|raise\b|assert\b)')

def notebooks()->list:
    "Every source notebook (not the executed showcase copies)."
    return sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb')
                  if 'showcase' not in p.parts and '.ipynb_checkpoints' not in p.parts)

def code_lines(line:str)->str:
    "`line` without string literals and comments, to look for `;` joins."
    line = re.sub(r'(\'[^\']*\'|"[^"]*")', '""', line)
    return line.split('#', 1)[0]

RUN_BY_DOCS = re.compile(r'^#\|\s*(export|exporti|exports|exec_doc|eval:\s*false)', re.M)

def mixes_imports(source:str)->bool:
    "A cell the docs build would run out of context: imports next to other top-level code (nbdev runs every import cell)."
    if RUN_BY_DOCS.search(source) or 'nbdev_export()' in source: return False
    try: body = ast.parse(source).body
    except SyntaxError: return False
    imports = [isinstance(n, (ast.Import, ast.ImportFrom)) for n in body]
    return any(imports) and not all(imports)

def offences(path:Path)->list:
    "(cell index, what) for every style offence in the notebook at `path`."
    found, cells = [], json.loads(path.read_text())['cells']
    has_docs = any(RUN_BY_DOCS.search(''.join(c['source'])) for c in cells if c['cell_type'] == 'code')
    for i, cell in enumerate(cells):
        if cell['cell_type'] != 'code': continue
        lines = ''.join(cell['source']).splitlines()
        generated = 'parameters' in cell['metadata'].get('tags', [])   # papermill's one parameters cell
        if len(lines) > MAX_CELL and not generated: found.append((i, f'{len(lines)} lines (max {MAX_CELL})'))
        if has_docs and mixes_imports(''.join(cell['source'])):   # nbdev runs them for the API docs
            found.append((i, 'imports next to other code: the docs build runs it out of context (split the imports off)'))
        for line in lines:
            if len(line) > MAX_LINE: found.append((i, f'{len(line)} chars: {line[:60]}...'))
            elif JOINED.search(code_lines(line)): found.append((i, f'statements joined by ";": {line.strip()[:60]}'))
    return found

def page_name(path:Path)->str:
    "The dotted name a notebook's title starts with: its module (`#| default_exp`), else its folder + stem."
    for cell in json.loads(path.read_text())['cells']:
        if m := re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(cell['source']), re.M):
            return 'halting_lab' if m.group(1) == '__init__' else m.group(1)
    rel = path.relative_to(ROOT / 'nbs').with_suffix('')
    return '.'.join(rel.parts)

def title(path:Path)->str:
    "The first line of the notebook's first markdown cell (the docs navigation shows it)."
    cell = next(c for c in json.loads(path.read_text())['cells'] if c['cell_type'] == 'markdown')
    return ''.join(cell['source']).splitlines()[0]

def test_titles_follow_one_pattern():
    "Every page title is `# <module or folder.stem> — <what it is>`, so the docs navigation reads as one list."
    bad = [f'{p.relative_to(ROOT)}: {title(p)!r}, expected {f"# {page_name(p)} — ..."!r}'
           for p in notebooks() if p.name != 'index.ipynb' and not title(p).startswith(f'# {page_name(p)} — ')]
    assert not bad, '\n'.join(bad)

def test_notebook_style():
    "No code line over MAX_LINE characters, no `;`-joined statements, no code cell over MAX_CELL lines."
    bad = {str(p.relative_to(ROOT)): len(o) for p in notebooks() if (o := offences(p))}
    assert not bad, f'style offences per notebook (run `python tests/test_style.py` for the list): {bad}'

if __name__ == '__main__':
    paths = [Path(a).resolve() for a in sys.argv[1:]] or notebooks()
    total = 0
    for p in paths:
        for i, what in offences(p):
            print(f'{p.relative_to(ROOT)} cell {i}: {what}')
            total += 1
    for p in paths:
        if p.name != 'index.ipynb' and not title(p).startswith(f'# {page_name(p)} — '):
            print(f'{p.relative_to(ROOT)} title: {title(p)!r}, expected "# {page_name(p)} — ..."')
            total += 1
    print(f'{total} offences')
