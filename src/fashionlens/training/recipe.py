"""The optimisation recipe: parameter groups, the optimiser, the schedule, and freeze-then-finetune.

Recipe (Chen et al. 2019, ML-GCN; Kim et al. 2021): heads at lr and the pretrained backbone at
lr x lrp once it is unfrozen after ``freeze_epochs`` epochs (transfer learning: frozen first, then
fine-tuned), a cosine schedule over the planned epochs, gradient norm clipped (the Trainer's
``gradient_clip_val``). The default optimiser and lr are in config.RECIPES.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from fashionlens.config import RecipeConfig


def configure_optimizers(model: nn.Module, backbone: nn.Module, recipe: RecipeConfig) -> dict:
    """Two groups (backbone at lr x lrp, heads at lr), the recipe's optimiser, cosine over the epochs.

    The backbone's group is there from the first step, while frozen too: frozen parameters have no
    gradient and no optimiser step, and the group's learning rate follows the same schedule.
    """
    lr = recipe.learning_rate
    backbone_ids = {id(p) for p in backbone.parameters()}
    head = [p for p in model.parameters() if id(p) not in backbone_ids]
    groups = [{"params": list(backbone.parameters()), "lr": lr * recipe.lrp}, {"params": head, "lr": lr}]
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, recipe.epochs))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class FreezeThenFinetune(BaseFinetuning):
    """The pretrained backbone frozen for ``freeze_epochs`` epochs, then trained (at lr x lrp).

    While frozen it also keeps its ImageNet BatchNorm statistics (eval mode), re-applied at every
    epoch start because Lightning puts the module back in train mode after each validation.
    """

    def __init__(self, freeze_epochs: int):
        super().__init__()
        self.freeze_epochs = int(freeze_epochs)

    def freeze_before_training(self, pl_module) -> None:
        if self.freeze_epochs > 0:
            self.freeze(pl_module.backbone, train_bn=False)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        backbone = pl_module.backbone
        if epoch < self.freeze_epochs:
            self.freeze(backbone, train_bn=False)
            backbone.eval()
        else:
            self.make_trainable(backbone)
