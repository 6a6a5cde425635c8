"""Drawing helpers used by every stage above them (training, evaluate, explain, the doctor, the reports):
``figures`` (matplotlib PNGs, written atomically), ``tables`` (a table as data, rendered for the terminal
and HTML) and ``html`` (a self-contained page). They import nothing of imgclf but the file writers.

Import the submodule you need: this package imports none of them, so a table does not load matplotlib.
"""
