"""Scheduling between the GPU's NVDEC sessions and the CPU decode workers (pure rules)."""

from __future__ import annotations

from vidsearch.pipeline.schedule import choose_side, gpu_capacity, gpu_room, next_gpu_chunks


def test_gpu_takes_a_video_while_it_has_room() -> None:
    assert gpu_capacity(8) == 12 and gpu_capacity(0) == 0
    assert choose_side([True], [0], [8], cpu_room=True) == 0
    assert choose_side([True], [11], [8], cpu_room=True) == 0


def test_full_gpu_gives_the_video_to_a_cpu_worker_with_room_else_queues_it() -> None:
    assert choose_side([True], [12], [8], cpu_room=True) is None
    assert choose_side([True], [12], [8], cpu_room=False) == 0


def test_refused_or_gpu_less_videos_go_to_the_cpu() -> None:
    assert choose_side([False], [0], [8], cpu_room=False) is None
    assert choose_side([True], [0], [0], cpu_room=False) is None
    assert choose_side([], [], [], cpu_room=True) is None


def test_least_loaded_gpu_of_several() -> None:
    assert choose_side([True, True, True], [5, 2, 2], [8, 8, 8], cpu_room=True) == 1
    assert choose_side([True, False, True], [5, 0, 3], [8, 8, 8], cpu_room=True) == 2


def test_room_counts_plans_to_ask_for() -> None:
    assert gpu_room([0, 12], [8, 8]) == 12
    assert gpu_room([13], [8]) == 0 and gpu_room([0], [0]) == 0


def test_one_chunk_per_video_oldest_first_up_to_free_sessions() -> None:
    videos = [(True, True), (False, True), (False, False), (False, True), (False, True)]
    assert next_gpu_chunks(videos, in_flight=1, sessions=3) == [1, 3]
    assert next_gpu_chunks(videos, in_flight=3, sessions=3) == []
    assert next_gpu_chunks(videos, in_flight=0, sessions=8) == [1, 3, 4]


def test_worth_gpu_keeps_small_frames_on_the_cpu() -> None:
    from vidsearch.pipeline.schedule import worth_gpu

    limit = 1280 * 720
    assert not worth_gpu(640, 360, limit) and not worth_gpu(1279, 720, limit)
    assert worth_gpu(1280, 720, limit) and worth_gpu(1920, 1080, limit) and worth_gpu(3840, 2160, limit)
    assert worth_gpu(64, 48, 0)  # 0: no size rule
