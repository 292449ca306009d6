"""Images and preprocessing: what a model is fed.

preprocessing.py (the model's preprocessing contract: resize, crop, mean/std, channels), images.py (image folders
walked safely, decoded and preprocessed, the cache), tensors.py (.npz/.npy inputs, checked). Imports core/ only.
This package re-exports nothing: import the module you need, e.g. `from edgekit.data.preprocessing import Preprocessing`.
"""
