"""One bad film never fails its chunk: whatever its decoding raises, it alone ends with a reason."""
from tests.helpers import StubScreener, chest_film
from worker import pipeline


def test_an_unexpected_decode_failure_fails_that_film_alone(monkeypatch):
    good, bad = chest_film(0), chest_film(1)
    real = pipeline.decode_film

    def decode(data: bytes):
        if data == bad:
            raise IndexError("a pydicom corner nobody checked")
        return real(data)

    monkeypatch.setattr(pipeline, "decode_film", decode)
    stub = StubScreener()
    first, second, third = pipeline.screen_files(stub, [good, bad, good])
    assert first.finding is not None and third.finding is not None and stub.images == 2
    assert second.finding is None and second.error.startswith("cannot decode the film (IndexError)")
