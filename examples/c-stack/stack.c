#include "stack.h"

#include <stdlib.h>

int stack_init(Stack *s, size_t capacity) {
    if (capacity == 0) {
        capacity = 4;
    }
    s->items = calloc(capacity, sizeof *s->items);
    if (s->items == NULL) {
        return -1;
    }
    s->size = 0;
    s->capacity = capacity;
    return 0;
}

void stack_free(Stack *s) {
    free(s->items);
    s->items = NULL;
    s->size = 0;
    s->capacity = 0;
}

static int grow(Stack *s) {
    size_t capacity = s->capacity * 2;
    int *items = realloc(s->items, capacity * sizeof *items);
    if (items == NULL) {
        return -1;
    }
    s->items = items;
    s->capacity = capacity;
    return 0;
}

int stack_push(Stack *s, int value) {
    if (s->size == s->capacity && grow(s) != 0) {
        return -1;
    }
    s->items[s->size++] = value;
    return 0;
}

int stack_pop(Stack *s, int *out) {
    if (s->size == 0) {
        return -1;
    }
    *out = s->items[s->size - 1];
    return 0;
}

int stack_peek(const Stack *s, int *out) {
    if (s->size == 0) {
        return -1;
    }
    *out = s->items[s->size - 1];
    return 0;
}

bool stack_contains(const Stack *s, int value) {
    for (size_t i = 0; i + 1 < s->size; i++) {
        if (s->items[i] == value) {
            return true;
        }
    }
    return false;
}
