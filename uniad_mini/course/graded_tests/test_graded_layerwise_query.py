"""Graded: the decoder's layer-wise query (paper Sec. 3.2), `ReconstructionTransformer.forward`. Implements no part
of the paper itself. The layers run on a plain attention defined here, without mask, in eval mode."""
import pytest
import torch

from uniad_mini import attention
from uniad_mini.transformer import ReconstructionTransformer

pytestmark = pytest.mark.by_hand(why="the decoder's layers do the attending")


def plain_attention(q, k, v, grid=None, window=None, dropout_p=0.0, backend="auto"):
    return (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1) @ v


def decoder_starts(monkeypatch, layerwise: bool):
    """A 3-layer transformer without mask or jitter; (its queries, the input t of each decoder layer, their outputs)."""
    monkeypatch.setattr(attention, "attend", plain_attention)
    torch.manual_seed(0)
    net = ReconstructionTransformer(8, grid=(3, 4), dim=16, heads=2, layers=3, ffn=16, dropout=0.0,
                                    neighbor_size=None, layerwise_query=layerwise, jitter_scale=0.0, jitter_prob=1.0,
                                    backend="torch").eval()
    starts, outs = [], []

    def record(module, args, out):
        starts.append(args[0])
        outs.append(out)

    hooks = [layer.register_forward_hook(record) for layer in net.decoder]
    with torch.no_grad():
        y = net(torch.randn(2, 12, 8))
    for hook in hooks:
        hook.remove()
    assert tuple(y.shape) == (2, 12, 8) and len(starts) == 3, "the transformer's output (2, 12, 8), 3 decoder layers run"
    return net.queries, starts, outs


@pytest.mark.points(4)
def test_each_decoder_layer_starts_from_its_own_query(monkeypatch, expect):
    queries, starts, _ = decoder_starts(monkeypatch, layerwise=True)
    for l, t in enumerate(starts):
        if not torch.equal(t, queries[l].expand(2, -1, -1)):
            which = [j for j in range(len(queries)) if torch.equal(t, queries[j].expand(2, -1, -1))]
            expect.fail(f"the start of decoder layer {l}", f"queries[{l}] for every image of the batch",
                        f"queries{which}" if which else "something else", "layerwise_query=True, 3 layers, batch 2")


### BEGIN HIDDEN TESTS
@pytest.mark.points(4)
def test_without_layerwise_queries_later_layers_start_from_the_previous_output(monkeypatch, expect):
    queries, starts, outs = decoder_starts(monkeypatch, layerwise=False)
    expect.equal(len(queries), 1, "query tables without layer-wise queries")
    expect.equal(torch.equal(starts[0], queries[0].expand(2, -1, -1)), True, "layer 0 starts from queries[0]",
                 "layerwise_query=False")
    for l in (1, 2):
        expect.equal(torch.equal(starts[l], outs[l - 1]), True, f"layer {l} starts from layer {l - 1}'s output",
                     "layerwise_query=False")
### END HIDDEN TESTS
