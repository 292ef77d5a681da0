"""Model folders in the official InternVL2 format: writing and checking them, the tokenizer,
the compatibility layer for a folder's own remote code, and transformers' reference model.
"""
