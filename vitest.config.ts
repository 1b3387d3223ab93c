import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/lab/**/*.test.ts'],
    testTimeout: 30_000,
    pool: 'forks'
  }
})
