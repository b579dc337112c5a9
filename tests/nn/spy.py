"""Observing what a memory chose, without production state kept for tests."""


def record_segment_lens(memory) -> list[int]:
    """A list that receives the segment length of every later sequence-mode call of ``memory``."""
    used: list[int] = []
    choose = memory.segment_len_for

    def spy(segment_len=None):
        used.append(choose(segment_len))
        return used[-1]

    memory.segment_len_for = spy
    return used


def peak_bytes(fn) -> tuple[int, object]:
    """The most bytes of tensor storage ``fn()`` held at once beyond what existed before it (CPU tensors,
    counted from the allocations and frees the profiler records), and what ``fn`` returned."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak, result
