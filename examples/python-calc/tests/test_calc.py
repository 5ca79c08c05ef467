import pytest

from calc import add, clamp, divide, mean, multiply, subtract


def test_add_and_subtract():
    assert add(2, 3) == 5
    assert subtract(2, 3) == -1


def test_multiply():
    assert multiply(4, 2.5) == 10


def test_divide():
    assert divide(7, 2) == 3.5
    assert divide(-9, 3) == -3


def test_divide_by_zero():
    with pytest.raises(ZeroDivisionError):
        divide(1, 0)


def test_mean():
    assert mean([1, 2, 3]) == 2
    assert mean([5]) == 5
    assert mean([1.5, 2.5]) == 2


def test_mean_of_nothing():
    with pytest.raises(ValueError):
        mean([])


def test_clamp():
    assert clamp(5, 0, 3) == 3
    assert clamp(-1, 0, 3) == 0
    assert clamp(2, 0, 3) == 2
