"""The food data set: the dish table, the painter, the builder, answer parsing, the validator
and the FoodieQA converter.
"""
