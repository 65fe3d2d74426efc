"""Analyses over run folders: which runs are seeds of one setup (:mod:`.runs`), IQM and mean
with stratified-bootstrap CIs (:mod:`.stats`), tables (:mod:`.tables`), the paper's figures
(:mod:`.figures`: learning curves, Fig. 5b value overestimation, Fig. 3 transfer matrix, Fig. 6
sensitivity; :mod:`.alignment`: Fig. 11 t-SNE). The command line is
``python -m coworld_trl.training.report``; the statistics and figures need the ``analysis``
extra (scipy, matplotlib, scikit-learn).
"""
