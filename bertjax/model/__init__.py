"""The model wing, bertjax's ground floor: the config, the parameter tree, the one capture mechanism,
input checks, and the pure forward with its parts (embeddings, attention, layer, encoder, heads).

May import: nothing of bertjax outside this wing. Every other wing stands on it.
"""
