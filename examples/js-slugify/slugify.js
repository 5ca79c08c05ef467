'use strict';

// Turn a title into a URL slug: "Crème Brûlée, 2nd Edition" -> "creme-brulee-2nd-edition".
function slugify(text, options = {}) {
  const separator = options.separator ?? '-';
  return String(text)
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '') // drop the accents NFKD split off their letters
    .toLowerCase()
    .replace(/[^a-z0-9]+/, separator)
    .replace(/^-+|-+$/g, '');
}

module.exports = { slugify };
