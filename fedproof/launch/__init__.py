"""Starting things: simulations (Ray), SuperLink/SuperNode processes from kits, provisioning the kits."""
