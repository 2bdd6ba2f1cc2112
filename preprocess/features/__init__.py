"""Cells -> features: handcrafted measurements or a ResNet-18 backbone, and training that backbone (``hali pretrain``)."""
