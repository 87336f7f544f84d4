// Every `deltad` command, in the order `deltad --help` lists them.
import type { Command } from '../command.js';

export const commands: Command[] = [];
