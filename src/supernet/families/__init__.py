"""The block families a search space's stages come from, and the registry that parses them.

- `elastic_mbconv` (the default): weight-shared elastic MBConv stages (OFA, BigNAS, AttentiveNAS, AlphaNet).
- `choice`: layers of candidate operators with independent weights (SPOS, Cream, DNA, EnNAS).
- `separable`: MobileNetV1's depthwise-separable blocks with weight-shared width and depth (slimmable MobileNetV1).
"""

from __future__ import annotations

from supernet.families.base import FamilyStage, LayerKey
from supernet.families.choice import ChoiceStage
from supernet.families.elastic_mbconv import ElasticMBConvStage
from supernet.families.separable import SeparableStage
from supernet.space import Families

FAMILIES = Families(
    {"elastic_mbconv": ElasticMBConvStage, "choice": ChoiceStage, "separable": SeparableStage}, default="elastic_mbconv"
)

__all__ = ["FAMILIES", "ChoiceStage", "ElasticMBConvStage", "FamilyStage", "LayerKey", "SeparableStage"]
