"""The plain-PyTorch training engines.

Submodules are imported by their users (`engine.supervised`, `.metrics`, `.data`, ...) so that
importing the package stays cheap.
"""
