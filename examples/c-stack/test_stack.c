/* A minimal test harness: each test is a function; CHECK records a failure and goes on. */
#include <stdio.h>

#include "stack.h"

static int failures_in_test;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            printf("  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures_in_test++;                                            \
        }                                                                  \
    } while (0)

static void test_push_then_peek(void) {
    Stack s;
    CHECK(stack_init(&s, 2) == 0);
    CHECK(stack_push(&s, 7) == 0);
    int top = 0;
    CHECK(stack_peek(&s, &top) == 0 && top == 7);
    CHECK(s.size == 1);
    stack_free(&s);
}

static void test_pop_order(void) {
    Stack s;
    CHECK(stack_init(&s, 2) == 0);
    for (int i = 1; i <= 3; i++) {
        CHECK(stack_push(&s, i) == 0);
    }
    int value = 0;
    CHECK(stack_pop(&s, &value) == 0 && value == 3);
    CHECK(stack_pop(&s, &value) == 0 && value == 2);
    CHECK(stack_pop(&s, &value) == 0 && value == 1);
    CHECK(stack_pop(&s, &value) == -1);
    CHECK(s.size == 0);
    stack_free(&s);
}

static void test_grows_past_capacity(void) {
    Stack s;
    CHECK(stack_init(&s, 1) == 0);
    for (int i = 0; i < 100; i++) {
        CHECK(stack_push(&s, i) == 0);
    }
    CHECK(s.size == 100 && s.capacity >= 100);
    int top = 0;
    CHECK(stack_peek(&s, &top) == 0 && top == 99);
    stack_free(&s);
}

static void test_contains(void) {
    Stack s;
    CHECK(stack_init(&s, 4) == 0);
    CHECK(!stack_contains(&s, 1));
    stack_push(&s, 1);
    stack_push(&s, 2);
    CHECK(stack_contains(&s, 1));
    CHECK(stack_contains(&s, 2));
    CHECK(!stack_contains(&s, 3));
    stack_free(&s);
}

static void test_empty_stack(void) {
    Stack s;
    CHECK(stack_init(&s, 0) == 0);
    int value = 42;
    CHECK(stack_pop(&s, &value) == -1);
    CHECK(stack_peek(&s, &value) == -1);
    CHECK(value == 42);
    stack_free(&s);
}

int main(void) {
    struct {
        const char *name;
        void (*run)(void);
    } tests[] = {
        {"push_then_peek", test_push_then_peek},
        {"pop_order", test_pop_order},
        {"grows_past_capacity", test_grows_past_capacity},
        {"contains", test_contains},
        {"empty_stack", test_empty_stack},
    };
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        failures_in_test = 0;
        tests[i].run();
        printf("%s %s\n", failures_in_test ? "FAIL" : "PASS", tests[i].name);
        if (failures_in_test) {
            failed++;
        } else {
            passed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
