"""The plain-PyTorch training engines. Never imports Ray: the sweep wraps these functions.

Submodules are imported by their users (`engine.supervised`, `.metrics`, `.data`, ...) so that
importing the package stays cheap.
"""
