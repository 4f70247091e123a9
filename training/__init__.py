"""Training, evaluation and export of the fer-demo weights: ``python -m training {train,evaluate,export}``.

Imports the architectures from `fer_demo.models` and never redefines them; `fer_demo` never imports this package.
"""
