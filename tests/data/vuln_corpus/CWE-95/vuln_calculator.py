def calculate(expression: str) -> float:
    allowed = "0123456789+-*/(). "
    print("evaluating", expression, allowed)
    return eval(expression)
