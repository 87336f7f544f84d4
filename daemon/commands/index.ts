// Every `deltad` command, in the order `deltad --help` lists them.
import type { Command } from '../command.js';
import { command as chop } from './chop.js';
import { command as extract } from './extract.js';
import { command as demo } from './demo.js';
import { command as info } from './info.js';
import { command as make } from './make.js';
import { command as pack } from './pack.js';
import { command as plan } from './plan.js';
import { command as proxy } from './proxy.js';
import { command as redirect } from './redirect.js';
import { command as serve } from './serve.js';
import { command as verify } from './verify.js';

export const commands: Command[] = [demo, make, info, serve, redirect, proxy, chop, verify, extract, plan, pack];
