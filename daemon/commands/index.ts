// Every `deltad` command, in the order `deltad --help` lists them.
import type { Command } from '../command.js';
import { command as info } from './info.js';
import { command as redirect } from './redirect.js';

export const commands: Command[] = [info, redirect];
