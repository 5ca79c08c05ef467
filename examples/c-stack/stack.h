#ifndef STACK_H
#define STACK_H

#include <stdbool.h>
#include <stddef.h>

/* A growable stack of ints. */
typedef struct {
    int *items;
    size_t size;
    size_t capacity;
} Stack;

int stack_init(Stack *s, size_t capacity); /* 0 on success, -1 when out of memory */
void stack_free(Stack *s);
int stack_push(Stack *s, int value);       /* 0 on success, -1 when out of memory */
int stack_pop(Stack *s, int *out);         /* 0 on success, -1 when empty */
int stack_peek(const Stack *s, int *out);  /* 0 on success, -1 when empty */
bool stack_contains(const Stack *s, int value);

#endif
