"""Reports: drawing (``plots``), tables (``tables``) and pages (``html``) that import nothing else of imgclf,
and, over a finished run, the HTML report (``page``) and the comparison of runs (``compare``).

Import the submodule you need: this package imports none of them, so a table does not load matplotlib.
"""
