"""Chatting with a model folder: the prompt, the engines (transformers, LMDeploy, an
OpenAI-compatible server), the session, the notebook chat cell, the server and the web demo.
"""
