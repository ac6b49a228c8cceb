"""Shapes, parameter count and FLOPs per training step of the reference model
(docs/model.md) and of larger variants (e.g. 224x224 tiles), standard library only.

FLOPs count 2 per multiply-add of convolutions and linear layers: forward, input
gradient (skipped where the input is data: first conv, first omics and clinical
layers) and weight gradient. BatchNorm, pooling, softmax, attention scores over 3
tokens and AdamW add < 0.1% and are not counted.
"""


def model_dims(genes=2000, tiles=16, tile_size=64, dim=128, channels=(32, 64, 128), clinical=12,
               omics_hidden=512, attn_hidden=64, clinical_hidden=64, ff_hidden=256, fusion_layers=1, n_mod=3):
    return dict(genes=genes, tiles=tiles, tile_size=tile_size, dim=dim, channels=tuple(channels), clinical=clinical,
                omics_hidden=omics_hidden, attn_hidden=attn_hidden, clinical_hidden=clinical_hidden,
                ff_hidden=ff_hidden, fusion_layers=fusion_layers, n_mod=n_mod)


def step_flops(batch=64, **kw):
    m = model_dims(**kw)
    conv, cin, hw = [], 3, m["tile_size"]
    for c in m["channels"]:
        conv.append(hw * hw * c * cin * 9)  # per tile, 3x3 same padding
        cin, hw = c, hw // 2
    tiles = batch * m["tiles"]
    conv_train = tiles * 2 * (3 * sum(conv) - conv[0])
    d, h, g, a = m["dim"], m["omics_hidden"], m["genes"], m["attn_hidden"]
    ae = g * h + h * d + d * h + h * g
    clin = m["clinical"] * m["clinical_hidden"] + m["clinical_hidden"] * d
    mil = m["tiles"] * (2 * d * a + a)  # V, U (d -> a), w (a -> 1)
    fus = m["fusion_layers"] * m["n_mod"] * (4 * d * d + 2 * d * m["ff_hidden"]) + d
    lin_train = batch * 2 * (3 * (ae + clin + mil + fus) - g * h - m["clinical"] * m["clinical_hidden"])
    return {"conv_gflop": conv_train / 1e9, "linear_gflop": lin_train / 1e9,
            "total_gflop": (conv_train + lin_train) / 1e9}


def param_count(**kw):
    """Trainable parameters; matches torch_reference.ReferenceModel (checked there)."""
    m = model_dims(**kw)
    d, h, g, a, c = m["dim"], m["omics_hidden"], m["genes"], m["attn_hidden"], m["clinical"]
    n = (g * h + h) + (h * d + d) + (d * h + h) + (h * g + g)  # omics AE
    cin = 3
    for ch in m["channels"]:
        n += cin * ch * 9 + 2 * ch  # conv (no bias: BN follows) + BN scale/shift
        cin = ch
    n += 2 * (d * a + a) + a  # gated attention V, U (with bias), w (no bias)
    n += (c * m["clinical_hidden"] + m["clinical_hidden"]) + (m["clinical_hidden"] * d + d)
    ff = m["ff_hidden"]
    n += m["n_mod"] * d  # modality embedding
    n += m["fusion_layers"] * ((3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d)
    n += d + 1  # head
    return n


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--gflop"]:  # GFLOP of one reference step, for scripts
        print(f"{step_flops()['total_gflop']:.4f}")
        sys.exit(0)
    for name, kw in (("reference (64x64 tiles)", {}), ("224x224 tiles", {"tile_size": 224})):
        f = step_flops(**kw)
        print(f"{name}: {param_count(**kw)} parameters, {f['total_gflop']:.1f} GFLOP per step of 64 patients "
              f"({100 * f['conv_gflop'] / f['total_gflop']:.2f}% convolution)")
