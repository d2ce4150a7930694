"""The batch order of group_by_modality_length: image and text-only examples in separate
megabatches, each sorted longest first, reshuffled per epoch from the seed (train.data)."""
import pytest
import torch

from groundflow.train.data import ModalityLengthGroupedSampler, modality_length_grouped_indices


def _lengths_and_modalities(n=103, seed=1):
    rng = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 900, (n,), generator=rng).tolist()
    has_image = (torch.rand(n, generator=rng) < 0.6).tolist()
    return lengths, has_image


def _megabatches(order, megabatch_size, has_image):
    """Cut an order into the megabatches the sampler made: whole ones, then each modality's remainder."""
    counts = {flag: sum(1 for f in has_image if f == flag) for flag in (False, True)}
    remainder_sizes = [counts[False] % megabatch_size, counts[True] % megabatch_size]
    whole = len(order) - sum(remainder_sizes)
    cuts = [order[i : i + megabatch_size] for i in range(0, whole, megabatch_size)]
    rest = order[whole:]
    cuts += [c for c in (rest[: remainder_sizes[0]], rest[remainder_sizes[0] :]) if c]
    return cuts


@pytest.mark.parametrize("megabatch_size", [1, 4, 16, 200])
def test_megabatches_hold_one_modality_each_sorted_longest_first(megabatch_size):
    lengths, has_image = _lengths_and_modalities()
    order = modality_length_grouped_indices(lengths, has_image, megabatch_size, torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))  # every example once
    megabatches = _megabatches(order, megabatch_size, has_image)
    assert sum(len(m) for m in megabatches) == len(order)
    for megabatch in megabatches:
        assert len({has_image[i] for i in megabatch}) == 1, megabatch
        assert [lengths[i] for i in megabatch] == sorted((lengths[i] for i in megabatch), reverse=True)


def test_every_device_batch_of_whole_megabatches_is_of_one_modality():
    lengths, has_image = _lengths_and_modalities(n=240)
    per_device, processes, accumulation = 2, 4, 3
    megabatch = per_device * processes * accumulation
    order = modality_length_grouped_indices(lengths, has_image, megabatch, torch.Generator().manual_seed(3))
    text = sum(1 for f in has_image if not f)
    whole = len(order) - text % megabatch - (len(order) - text) % megabatch
    batches = [order[i : i + per_device] for i in range(0, whole, per_device)]
    assert all(len({has_image[i] for i in batch}) == 1 for batch in batches)


def test_the_longest_example_comes_first():
    lengths, has_image = _lengths_and_modalities(n=300)
    for seed in range(5):
        order = modality_length_grouped_indices(lengths, has_image, 8, torch.Generator().manual_seed(seed))
        whole_members = order[: 8 * (len(order) // 8 - 2)]
        assert lengths[order[0]] == max(lengths[i] for i in whole_members)


def test_shuffled_between_megabatches_not_grouped_by_modality():
    lengths, has_image = _lengths_and_modalities(n=400)
    order = modality_length_grouped_indices(lengths, has_image, 4, torch.Generator().manual_seed(0))
    modality_of_megabatch = [has_image[order[i]] for i in range(0, 4 * 60, 4)]
    switches = sum(a != b for a, b in zip(modality_of_megabatch, modality_of_megabatch[1:]))
    assert switches > 10  # interleaved, as LLaVA shuffles its megabatches, not all images then all text


def test_sampler_replays_an_epoch_from_seed_and_epoch():
    lengths, has_image = _lengths_and_modalities()
    sampler = ModalityLengthGroupedSampler(lengths, has_image, megabatch_size=8, seed=7)
    assert len(sampler) == len(lengths)
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    again = ModalityLengthGroupedSampler(lengths, has_image, megabatch_size=8, seed=7)
    again.set_epoch(2)
    assert list(again) == epoch2  # a resumed run skips exactly the batches it trained on
    again.set_epoch(3)
    assert list(again) != epoch2


def test_only_text_or_only_images():
    lengths = [3, 9, 1, 7, 5]
    for flag in (False, True):
        order = modality_length_grouped_indices(lengths, [flag] * 5, 2, torch.Generator().manual_seed(0))
        assert sorted(order) == [0, 1, 2, 3, 4]


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="3 lengths for 2 modality flags"):
        modality_length_grouped_indices([1, 2, 3], [True, False], 2, torch.Generator())
    with pytest.raises(ValueError, match="megabatch_size"):
        modality_length_grouped_indices([1], [True], 0, torch.Generator())
