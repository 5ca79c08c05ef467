'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { slugify } = require('../slugify.js');

test('lowercases and joins two words', () => {
  assert.equal(slugify('Hello World'), 'hello-world');
});

test('replaces every run of punctuation and spaces', () => {
  assert.equal(slugify('Hello, World! Again'), 'hello-world-again');
});

test('removes accents', () => {
  assert.equal(slugify('Crème Brûlée'), 'creme-brulee');
});

test('trims separators at both ends', () => {
  assert.equal(slugify('  -- Trim me --  '), 'trim-me');
});

test('uses a custom separator everywhere, including the ends', () => {
  assert.equal(slugify(' Snake case me ', { separator: '_' }), 'snake_case_me');
});

test('keeps digits', () => {
  assert.equal(slugify('Top 10 tips'), 'top-10-tips');
});
