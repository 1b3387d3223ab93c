// Lint: typescript-eslint's recommended rules plus the layer boundaries from STYLE.md.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

const banned = (groups) => ['error', { patterns: [{ group: groups, message: 'crosses a layer boundary (see shared/STYLE.md)' }] }]

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'bench/results/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    // Type-aware rules: a promise nobody awaits loses its rejection (an unhandled
    // rejection ends the daemon), and a promise handed where a void callback is expected
    // (an event handler, a timer) does the same.
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error'
    }
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }]
    }
  },
  { files: ['src/protocol/**'], rules: { 'no-restricted-imports': banned(['../tunnel/*', '../daemon/*', '../ipc/*', '../cli/*', '../rendezvous/*', 'node:dgram', 'node:net', 'node:fs', 'winston', 'conf']) } },
  { files: ['src/tunnel/**'], rules: { 'no-restricted-imports': banned(['../daemon/*', '../ipc/*', '../cli/*', '../rendezvous/*', 'conf', 'winston']) } },
  { files: ['src/cli/**'], rules: { 'no-restricted-imports': banned(['../tunnel/*', '../daemon/*', '../rendezvous/*', 'winston', 'conf', 'udx-native', 'sodium-native', '@hyperswarm/*']) } },
  { files: ['**/*.js', '**/*.cjs', '**/*.mjs'], languageOptions: { globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', performance: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', queueMicrotask: 'readonly', setImmediate: 'readonly' } } }
)
