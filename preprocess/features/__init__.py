"""Cells -> features: the packaged cellnet CNN, handcrafted measurements or a ResNet-18 backbone, and training that backbone (``hali pretrain``)."""
