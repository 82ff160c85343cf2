"""Frozen ImageNet backbones that return the tapped feature maps."""
from patchbank.backbones.factory import Backbone, create_backbone

__all__ = ["Backbone", "create_backbone"]
