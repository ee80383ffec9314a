"""What is trained: the model registry, MLP and CNN (`registry`), shared layers and the input
contract (`layers`), pretrained torchvision backbones and their weights (`backbones`), the
frozen-feature cache (`features`), test-time views around a trained model (`views`).

May import `data`, `settings` and `runtime`."""
