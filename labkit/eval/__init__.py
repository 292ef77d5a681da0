"""Before and after: evaluation on the held-out pictures and its figures.
"""
