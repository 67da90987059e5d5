"""Graded: the decoder's layer-wise query (paper Sec. 3.2), `ReconstructionTransformer.forward`. Implements no part
of the paper itself. The encoder and decoder layers are stand-ins (probes.encoder_stand_in, decoder_stand_in: no
attention, no other assignment's part), so only the choice of each decoder layer's query is graded."""
import pytest
import torch

from uniad_mini.transformer import ReconstructionTransformer

pytestmark = pytest.mark.by_hand(why="the decoder's layers do the attending")
STAND_INS = {"transformer.EncoderLayer.forward": "probes.encoder_stand_in",
             "transformer.DecoderLayer.forward": "probes.decoder_stand_in",
             "transformer.ReconstructionTransformer.jitter_in_training": "probes.keep_tokens"}


def decoder_starts(student, layerwise: bool):
    """A 3-layer transformer; (its query tables, the input t of each decoder layer, their outputs)."""
    torch.manual_seed(0)
    net = ReconstructionTransformer(8, grid=(3, 4), dim=16, heads=2, layers=3, ffn=16, dropout=0.0,
                                    neighbor_size=None, layerwise_query=layerwise, jitter_scale=0.0, jitter_prob=1.0,
                                    backend="torch").eval()
    y, queries, starts, outs = student("probes.decoder_starts", net, torch.randn(2, 12, 8), patch=STAND_INS)
    assert tuple(y.shape) == (2, 12, 8) and len(starts) == 3, "the transformer's output (2, 12, 8), 3 decoder layers run"
    return queries, starts, outs


@pytest.mark.points(4)
def test_each_decoder_layer_starts_from_its_own_query(expect, student):
    queries, starts, _ = decoder_starts(student, layerwise=True)
    for l, t in enumerate(starts):
        if not torch.equal(t, queries[l].expand(2, -1, -1)):
            which = [j for j in range(len(queries)) if torch.equal(t, queries[j].expand(2, -1, -1))]
            expect.fail(f"the start of decoder layer {l}", f"queries[{l}] for every image of the batch",
                        f"queries{which}" if which else "something else", "layerwise_query=True, 3 layers, batch 2")


### BEGIN HIDDEN TESTS
@pytest.mark.points(4, category="without layer-wise queries")
def test_without_layerwise_queries_later_layers_start_from_the_previous_output(expect, student):
    queries, starts, outs = decoder_starts(student, layerwise=False)
    expect.equal(len(queries), 1, "query tables without layer-wise queries")
    expect.equal(torch.equal(starts[0], queries[0].expand(2, -1, -1)), True, "layer 0 starts from queries[0]",
                 "layerwise_query=False")
    for l in (1, 2):
        expect.equal(torch.equal(starts[l], outs[l - 1]), True, f"layer {l} starts from layer {l - 1}'s output",
                     "layerwise_query=False")
### END HIDDEN TESTS
