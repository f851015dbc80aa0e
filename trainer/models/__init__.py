"""Models: the networks the batches go through.

`resnet` (torchvision-layout ResNets returning layer1..layer3 features with the logits),
`networks` (the CoViAR modality networks: MV and residual input BatchNorm, TSN averaging,
pretrained loading, MAC counting), `heads` (the internal-classifier head, one class with
parameters) and `exits` (a frozen network with its four exits and their measured cost).
"""
