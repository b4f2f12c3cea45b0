"""A command trainer that prints garbage instead of JSON metrics."""

print("epoch 1 done, loss=0.3")
print("{not json")
