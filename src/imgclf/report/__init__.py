"""Reports over finished runs, from their run directories alone: the HTML report (``page``) and the
comparison of runs (``compare``). The drawing they share with the other stages is :mod:`imgclf.plots`.

Import the submodule you need: this package imports none of them.
"""
