"""Hand-designed starting points, written as trial params so the search can `enqueue_trial` them and
`sample_config(FixedTrial(params))` rebuilds them. Each sits just under the budget (`budget_fraction`)."""

from __future__ import annotations

_RECIPE = dict(
    loss_focal=0.0, loss_dice=0.5, loss_lovasz=0.0, loss_boundary=0.0, class_weight_power=0.0,
    label_smoothing=0.0, optimizer="adamw", lr_adamw=3e-3, weight_decay=1e-4, warmup_frac=0.05,
    batch_size=16, rfs_threshold=0.0,
)


def _stages(*stages: tuple) -> dict:
    """(block, depth, expansion, kernel, se) per stage -> trial params."""
    params: dict = {"n_stages": len(stages)}
    for i, (block, depth, expansion, kernel, se) in enumerate(stages):
        params.update({f"s{i}_block": block, f"s{i}_depth": depth, f"s{i}_kernel": kernel, f"s{i}_se": se})
        if block == "ir":
            params[f"s{i}_expansion"] = expansion
    return params


PRESETS: dict[str, dict] = {
    # Light DeepLabv3+: inverted-residual encoder, dilated last stage (OS 16), ASPP 2/4/6, 1/4 skip.
    "deeplab_lite": {
        **_stages(("ir", 1, 4, 3, False), ("ir", 2, 4, 3, False), ("ir", 3, 4, 3, True), ("ir", 3, 4, 3, True)),
        "width_growth": 2.0, "output_stride": 16, "dilation_32": 2, "context": "aspp", "aspp_rates": "2-4-6",
        "stem_width": 16, "context_width": 128, "skip4": True, "skip8": False, "skip2": False, "skip_width": 32,
        "detail_width": 0, "decoder_width": 64, "decoder_depth": 2, "decoder_cbam": False, "activation": "relu",
        "aux_head": False, "budget_fraction": 0.95, **_RECIPE,
    },
    # BiSeNet-style: a shallow detail path to 1/8 beside a deep context path with pyramid pooling.
    "bisenet_style": {
        **_stages(("ds", 1, 4, 3, False), ("ir", 2, 4, 3, False), ("ir", 4, 4, 3, False), ("ir", 2, 6, 3, True)),
        "width_growth": 2.0, "output_stride": 16, "dilation_32": 1, "context": "ppm",
        "stem_width": 16, "context_width": 128, "skip4": False, "skip8": False, "skip2": False, "skip_width": 32,
        "detail_width": 64, "decoder_width": 96, "decoder_depth": 1, "decoder_cbam": False, "activation": "relu",
        "aux_head": True,
        "budget_fraction": 0.95, **_RECIPE,
    },
    # Depthwise-separable U-Net: five stages, skips at 1/8 and 1/4, two-conv decoder steps, no context module.
    "dw_unet": {
        **_stages(("ds", 1, 4, 3, False), ("ds", 2, 4, 3, False), ("ds", 3, 4, 3, False), ("ds", 4, 4, 3, False),
                  ("ds", 3, 4, 3, False)),
        "width_growth": 2.0, "output_stride": 16, "dilation_32": 2, "context": "none",
        "stem_width": 16, "context_width": 64, "skip4": True, "skip8": True, "skip2": False, "skip_width": 16,
        "detail_width": 0, "decoder_width": 32, "decoder_depth": 2, "decoder_cbam": False, "activation": "relu",
        "aux_head": False,
        "budget_fraction": 0.95, **_RECIPE,
    },
}
