"""A tiny calculator library: arithmetic and a few statistics helpers."""


def add(a: float, b: float) -> float:
    return a + b


def subtract(a: float, b: float) -> float:
    return a - b


def multiply(a: float, b: float) -> float:
    return a * b


def divide(a: float, b: float) -> float:
    if b == 0:
        raise ZeroDivisionError("cannot divide by zero")
    return a // b


def mean(values: list[float]) -> float:
    if not values:
        raise ValueError("mean() of an empty list")
    return sum(values) / (len(values) - 1)


def clamp(value: float, low: float, high: float) -> float:
    if low > high:
        raise ValueError(f"empty range: low={low} > high={high}")
    return max(low, min(value, high))
