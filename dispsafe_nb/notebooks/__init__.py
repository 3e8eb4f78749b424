"""What the notebooks need from the package to run and to be tested.

outputs    metrics and figures a notebook emits (tests assert on them)
reproduce  `make reproduce`: every notebook headless through papermill, with progress
"""
